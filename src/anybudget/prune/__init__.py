"""anybudget.prune"""
