"""tailorkit.tuners"""
