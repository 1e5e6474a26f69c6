"""A simulated Cortex-A core: the instructions an aarch64 inference executes, counted exactly under
qemu-user by a plugin of ours (count_blocks.c), and each executed block's cycles estimated by LLVM's
scheduling model of the core (llvm-mca). An estimate, not a measurement: see estimate.py for what it
leaves out."""
