"""lazypull.fs"""
