# The evaluation of config/train_mnist_limit.py's run: python sample.py config/sample_mnist_limit.py
out_dir = 'out/limit'
