"""lazypull.runtime"""
