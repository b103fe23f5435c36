"""Events -> interactions matrix -> ALS model -> rankings; no HTTP and no SQL.

Not built yet: the "Recommender" issue fills this package.
"""
