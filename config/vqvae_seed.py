# The published MNIST tokenizer (github.com/suyashss/mnist_vlm): an MLP VQ-VAE, 8 tokens from 26 codes
# (the letters A..Z), Adam 2e-4, early stopping.
# python vqvae.py config/vqvae_seed.py --out_dir=out/vqvae_seed
out_dir = 'out/vqvae_seed'
kind = 'mlp'
quantizer = 'vq'
hidden = 128
latent_dim = 32
tokens_per_image = 8
codebook_size = 26
beta = 0.25
learning_rate = 2e-4
max_epochs = 200
warmup_iters = 0
loss = 'mse'
