"""The collective cost model (`costmodel`): how long an all-reduce takes over a given set of ranks and links. Below
both the training scheduler (which plans with it) and the placement strategies (which score with it); it imports
neither."""
