"""What every stage needs and nothing in interp provides: paths, devices, torch.distributed, atomic writes, checks.

Nothing here imports another interp package.
"""
