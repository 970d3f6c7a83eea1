"""Dataset rows, the one encoder and collation."""
