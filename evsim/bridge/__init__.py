"""The PyTorch bridge (needs the ``torch`` extra): spiking layers, network
definitions, training, folding/export and verification against the engine."""
