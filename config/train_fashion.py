# Fashion-MNIST's language model, over the sequences of
# python prepare.py --tokenizer=out/vqvae_fashion/ckpt.pt --data_dir=data/fashion
data_dir = 'data/fashion'
out_dir = 'out/fashion'
label_weight = 30.0   # clothes are harder to tell apart than digits: reading gets more of the gradient
max_iters = 3600      # the whole pipeline within 20 minutes on 2 CPU cores (README)
lr_decay_iters = 3600
eval_interval = 900
