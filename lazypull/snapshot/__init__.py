"""lazypull.snapshot"""
