"""Using a trained model: predictions for new images (`predict`) and the validation report with its
mistakes (`evaluate`)."""
