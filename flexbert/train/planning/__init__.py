"""`flexbert plan`: a run's memory, FLOPs, steps and GPU-hours, measured on the meta device."""
