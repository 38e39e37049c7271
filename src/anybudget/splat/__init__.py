"""anybudget.splat"""
