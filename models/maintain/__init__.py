"""The batch maintenance loop: batch training and cross-validation, hyperparameter search,
comparison with the champion, compression and int8 export, adoption by the online
learner, and the registry's files.
"""
