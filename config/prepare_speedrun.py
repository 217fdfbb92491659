# The speedrun's data (config/vqvae_speedrun.py says how to run it)
tokenizer = 'out/vqvae_speedrun/ckpt.pt'
data_dir = 'data/speedrun'
augment = 2      # training sees 128,000 sequences of the 150,000: more moved copies would go unseen
shares = '1,3'   # three reading sequences to one drawing: the reading is what the clock stops on
