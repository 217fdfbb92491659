# Fashion-MNIST's evaluation and drawing:
# python sample.py config/sample_fashion.py
out_dir = 'out/fashion'
# clothes need stronger guidance than digits to be drawn as their class (docs/experiments.md): the
# guidance and temperature are chosen on the validation split among these
sweep_guidance = '2,3,4'
sweep = '0.8,0.9,1.0'
# the image and its four one-pixel moves along the axes: the diagonal moves, 1.4 pixels away, read worse
# on the validation split (docs/experiments.md)
views = 5
