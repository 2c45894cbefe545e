"""tuner.ui.tabs."""
