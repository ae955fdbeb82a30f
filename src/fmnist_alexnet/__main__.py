import sys

from fmnist_alexnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
