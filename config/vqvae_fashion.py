# Fashion-MNIST's tokenizer (the README's Fashion-MNIST row):
# python vqvae.py config/vqvae_fashion.py --idx_dir=../shared/fashion-mnist   (no idx_dir: downloaded)
dataset = 'fashion'
out_dir = 'out/vqvae_fashion'
levels = '8,5,5,5'   # 1000 codes: clothes' textures need more than the 125 that draw a digit (README)
hidden = 128         # wider, with standardised latents, it keeps more of the texture that tells a shirt from a
latent_norm = True   # T-shirt: the language model reads it better once trained long enough (README)
