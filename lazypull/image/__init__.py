"""lazypull.image"""
