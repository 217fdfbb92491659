# Fashion-MNIST's evaluation and drawing:
# python sample.py config/sample_fashion.py
out_dir = 'out/fashion'
# clothes need stronger guidance than digits to be drawn as their class (docs/experiments.md): the
# guidance and temperature are chosen on the validation split among these
sweep_guidance = '2,3,4'
sweep = '0.8,0.9,1.0'
