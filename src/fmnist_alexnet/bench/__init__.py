"""``bench``: training's images/s side by side with a bare step and the seed's way
(``timing``), and where a step's time goes on the CPU (``step_parts``)."""
