"""What trains: full fine-tuning or adapters, per component."""
