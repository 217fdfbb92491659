# The published MNIST setting: a 14M-parameter nanoGPT over the MLP tokenizer's 8 letters.
# python train.py config/train_mnist_vlm_seed.py
out_dir = 'out/mnist_vlm_seed'
eval_interval = 500
eval_iters = 20
log_interval = 10

n_layer = 8
n_head = 8
n_embd = 384
dropout = 0.2

batch_size = 256
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

# the published model's AdamW, plain next-token loss and random embeddings (this repo's defaults differ)
muon = False
label_weight = 1.0
embed_codes = False
