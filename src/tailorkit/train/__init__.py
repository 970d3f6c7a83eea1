"""tailorkit.train"""
