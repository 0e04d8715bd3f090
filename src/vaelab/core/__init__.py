"""What every layer stands on: errors, atomic files and locks, devices and memory, moved import paths."""
