# The speedrun's evaluation: the test set read, nothing judged (config/vqvae_speedrun.py says how to run it)
out_dir = 'out/speedrun'
judge = False
