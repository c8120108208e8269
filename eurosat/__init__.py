"""Communication-efficient federated learning on EuroSAT, in rooms (each imports only those above it):

- `common`: atomic files, output paths, the one-line-error convention of every command;
- `data`: the EuroSAT source, partitions, decoded tensors, the folder check, augmentation, download;
- `train`: the CNN, local training and evaluation, the learning-rate schedule, safe checkpoint loading;
- `quant`: the quantization registry (PTQ, packed N-bit files), QAT, precision recipes, sizes;
- `fl`: the Flower ServerApp and ClientApp, the strategy, the wire (codecs, link, protocol), the run config and record;
- `report`: the PTQ report, statistics, corruptions, figures and tables over runs;
- `launch`: the launcher (`python -m eurosat.launch`), the Deployment Engine, process control, Slurm helpers.
"""
