"""anybudget.kv"""
