"""tailorkit.data"""
