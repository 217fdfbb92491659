# The speedrun: MNIST read at 0.99 in the least time, the four scripts (docs/experiments.md, "The speedrun"):
# python bench.py --pipeline=True --pipeline_config=speedrun --idx_dir=../shared/mnist
# or by hand: python vqvae.py config/vqvae_speedrun.py --idx_dir=../shared/mnist && python prepare.py
# config/prepare_speedrun.py && python train.py config/train_speedrun.py && python sample.py config/sample_speedrun.py
out_dir = 'out/vqvae_speedrun'
max_epochs = 2   # half the default's epochs: the time goes to training the reader
min_iters = 0
class_weight = 0.1  # codes that keep what tells digits apart: fewer iterations read 0.99 (docs/experiments.md)
