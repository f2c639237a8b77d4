"""Model zoo (being written): build(name, num_classes, input_shape, normalization)."""
