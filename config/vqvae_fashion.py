# Fashion-MNIST's tokenizer:
# python vqvae.py config/vqvae_fashion.py --idx_dir=../shared/fashion-mnist   (no idx_dir: downloaded)
dataset = 'fashion'
out_dir = 'out/vqvae_fashion'
levels = '8,5,5,5'   # 1000 codes: clothes' textures need more than the 125 that draw a digit
hidden = 128         # keeps more of the texture that tells a shirt from a T-shirt: it reads better
latent_norm = True   # without it, 128 channels leave most codes unused (one latent stuck at a level)
max_epochs = 5       # 10 keep a little more of what tells clothes apart, for twice the time (docs/experiments.md)
class_weight = 0.1   # a classifier of the codes in the loss: they keep more of what tells clothes apart (docs/experiments.md)
