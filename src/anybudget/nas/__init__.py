"""anybudget.nas"""
