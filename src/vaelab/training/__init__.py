"""Training: the loop, its step core and budget, stacked runs, processes, tracking, the reference classifier."""
