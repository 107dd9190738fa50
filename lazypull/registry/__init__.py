"""lazypull.registry"""
