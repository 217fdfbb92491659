# Fashion-MNIST read at the limit of half an hour on 2 cores (docs/experiments.md): config/train_fashion.py's
# model trained over a tokenizer of twice the epochs and 16 moved copies of each training image rather than
# 4, for 6,000 iterations, and the test split read with the drawings not judged (as the MNIST speedrun):
# python vqvae.py config/vqvae_fashion.py --idx_dir=../shared/fashion-mnist --max_epochs=10 --out_dir=out/vqvae_fashion_limit
# python prepare.py config/prepare_fashion.py --tokenizer=out/vqvae_fashion_limit/ckpt.pt --augment=16 --data_dir=data/fashion_limit
# torchrun --standalone --nproc_per_node=2 train.py config/train_fashion_limit.py
# python sample.py config/sample_fashion.py --out_dir=out/fashion_limit --judge=False
data_dir = 'data/fashion_limit'
out_dir = 'out/fashion_limit'
label_weight = 30.0   # as config/train_fashion.py (its comments say why)
learning_rate = 6e-3
min_lr = 6e-4
max_iters = 6000      # the pipeline within half an hour on 2 cores: 768,000 of the 850,000 sequences drawn
lr_decay_iters = 6000
time_limit = 1720     # the pipeline within half an hour, sample.py the rest: a slower machine trains fewer iterations
cycles = 1
eval_interval = 3000
compile = 'auto'
tail_average = 1/6    # the plain mean of the last 1,000 iterations' weights
