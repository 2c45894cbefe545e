"""Files copied next to exported models; they run without tuner or torch installed."""
