"""vlmdiff_train: the offline PyTorch side of vlmdiff edge (networks, checkpoints, training, ONNX export).

Kept import-light on purpose: importing the package must not pull torch, so tools that only read configs or
bundle files stay fast. Import submodules (vlmdiff_train.nets, .presets, .checkpoints, ...) explicitly.
"""
__version__ = "0.1.0"
