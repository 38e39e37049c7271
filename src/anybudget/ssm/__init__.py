"""anybudget.ssm"""
