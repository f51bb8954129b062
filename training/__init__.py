"""Training half: Keras recipes, evaluation, export. The only package that imports TensorFlow."""
