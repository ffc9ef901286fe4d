"""Figure helpers: several runs in one layer panel keep their own line styles."""

import matplotlib.colors

from lm_eval_false_demos.results import figures


def test_layer_figure_draws_each_curve_in_its_given_style_and_settings_in_theirs(tmp_path):
    curves = {"correct, float32": [0.5, 0.9], "correct, bfloat16": [0.5, 0.8], "permuted": [0.5, 0.3]}
    styles = {"correct, float32": {"color": "tab:blue", "linestyle": "-"},
              "correct, bfloat16": {"color": "tab:orange", "linestyle": "--"}}
    figure = figures.layer_figure([{"curves": curves, "chance": 0.5, "styles": styles}])
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert matplotlib.colors.same_color(lines["correct, bfloat16"].get_color(), "tab:orange")
    assert lines["correct, bfloat16"].get_linestyle() == "--"
    assert matplotlib.colors.same_color(lines["permuted"].get_color(), figures.SETTING_STYLES["permuted"]["color"])
    first = figures.save_png(figure, tmp_path / "curves.png")
    again = figures.save_png(figures.layer_figure([{"curves": curves, "chance": 0.5}]), first, overwrite=True)
    assert again == first and first.stat().st_size > 0
