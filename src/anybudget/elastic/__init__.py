"""anybudget.elastic"""
