# Fashion-MNIST's sequences:
# python prepare.py config/prepare_fashion.py
tokenizer = 'out/vqvae_fashion/ckpt.pt'
data_dir = 'data/fashion'
# clothes come centred and upright: copies moved half as far as the digits' read better
shift = 1.0
rotate = 5.0
scale = 0.05
# 7/8 of the sequences image -> class: clothes are harder to read than to draw
shares = '1,7'
