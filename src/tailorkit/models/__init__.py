"""Model families, loading and tiny random builds."""
