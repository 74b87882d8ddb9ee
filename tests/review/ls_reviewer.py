"""A QA reviewer at work in Label Studio, through label-studio-sdk (run with the Label Studio environment's python).

Reads ``{"url", "token", "actions": [...]}`` as JSON on stdin, performs each action on its task and prints the
stored annotations as JSON. Actions start from the task's pre-annotation (the champion's boxes), as the
labelling UI does:

    {"op": "accept", "task": id}                          submit the pre-annotation unchanged
    {"op": "move", "task": id, "dx": 5.0}                 shift the first box right by dx percent
    {"op": "delete", "task": id}                          remove the first box
    {"op": "add", "task": id, "label": name, "box": [x, y, w, h]}   add a box (percent)
    {"op": "relabel", "task": id, "label": name}          change the first box's class
    {"op": "skip", "task": id}                            skip the task
    {"op": "no_defect", "task": id}                       remove every box and choose "no defect"
    {"op": "edit", "annotation": id, "task": id, "dx": 5.0}   move the first box of a stored annotation again
"""

import copy
import json
import sys

from label_studio_sdk import LabelStudio


def region(label, box, width, height):
    x, y, w, h = box
    return {
        "id": f"qa-{label}-{x}-{y}",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }


def main() -> None:
    plan = json.load(sys.stdin)
    client = LabelStudio(base_url=plan["url"], api_key=plan["token"])
    out = []
    for action in plan["actions"]:
        task = client.tasks.get(id=str(action["task"]))
        data = task.data
        predictions = task.predictions or []
        predicted = copy.deepcopy(predictions[0].result) if predictions else []
        for r in predicted:
            r.pop("score", None)
        op = action["op"]
        kwargs = {}
        if op == "accept":
            result = predicted
        elif op == "move":
            result = predicted
            result[0]["value"]["x"] = round(result[0]["value"]["x"] + action["dx"], 4)
        elif op == "delete":
            result = predicted[1:]
        elif op == "add":
            result = predicted + [region(action["label"], action["box"], data["width"], data["height"])]
        elif op == "relabel":
            result = predicted
            result[0]["value"]["rectanglelabels"] = [action["label"]]
        elif op == "skip":
            result, kwargs = [], {"was_cancelled": True}
        elif op == "no_defect":
            choice = {"id": "verdict", "type": "choices", "from_name": "verdict", "to_name": "image"}
            result = [{**choice, "value": {"choices": ["no defect"]}}]
        elif op == "edit":
            stored = client.annotations.get(id=action["annotation"])
            result = copy.deepcopy(stored.result)
            result[0]["value"]["x"] = round(result[0]["value"]["x"] + action["dx"], 4)
            saved = client.annotations.update(id=action["annotation"], result=result)
            out.append({"task": action["task"], "annotation": saved.id, "op": op, "result": saved.result})
            continue
        else:
            raise SystemExit(f"unknown op {op!r}")
        parent = {"parent_prediction": predictions[0].id} if predictions else {}
        saved = client.annotations.create(id=action["task"], result=result, **kwargs, **parent)
        out.append({"task": action["task"], "annotation": saved.id, "op": op, "result": saved.result})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
