"""tailorkit.models"""
