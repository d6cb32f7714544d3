"""neuron-atlas: neuron atlases (feature visualizations + dataset examples) for vision models."""

__version__ = "0.1.0"
