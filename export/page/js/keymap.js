// Key map of the web player: keyboard keys (KeyboardEvent.code) bound to the buttons of a model's action spec.
//
// A port of play/keymap.py, so the page binds the same keys as `reverie play`: known button names get the keys a
// player expects (arrows and WASD move, Space fires or jumps, Ctrl attacks, E uses, Shift runs); specs that both
// turn and strafe get arrows to turn and A/D to strafe; buttons with unknown names get spare letter keys in spec
// order, so every button is reachable. The player's own controls (Esc, Enter, P, `.`, 1-4, [ ], F1, F5, F9, R,
// Tab, H) are never bound to a button. Atari specs (one button per joystick combination: 'upright',
// 'downleftfire', ...) are played by pressing the parts together; opposite directions cancel.
// Axes (e.g. a turn delta) are not played from the page: they stay at 0.

// The player's own controls: never bound to a game button (the same set as the desktop window's).
export const RESERVED_CODES = new Set([
  "Escape", "Enter", "NumpadEnter", "KeyP", "Period", "Digit1", "Digit2", "Digit3", "Digit4",
  "BracketLeft", "BracketRight", "F1", "F5", "F9", "KeyR", "Tab", "KeyH",
]);

// [codes, button names in order of preference]: each code is bound to the first name the spec has.
const NAMED_BINDINGS = [
  [["ArrowUp", "KeyW"], ["up", "move_forward", "forward", "move_up"]],
  [["ArrowDown", "KeyS"], ["down", "move_backward", "backward", "back", "move_down"]],
  [["ArrowLeft"], ["left", "turn_left", "move_left"]],
  [["ArrowRight"], ["right", "turn_right", "move_right"]],
  [["KeyA"], ["move_left", "left", "turn_left"]],      // strafe where the spec can both turn and strafe
  [["KeyD"], ["move_right", "right", "turn_right"]],
  [["Space"], ["fire", "jump", "attack", "shoot", "action", "a", "button_a"]],
  [["ControlLeft", "ControlRight"], ["attack", "fire", "shoot"]],
  [["KeyE"], ["use", "interact"]],
  [["ShiftLeft", "ShiftRight"], ["speed", "run", "sprint"]],
  [["KeyC"], ["crouch", "duck"]],
];

// Codes given, in this order, to buttons that no named binding covers.
const SPARE_CODES = [..."ZXCVBNMFGJKLQTYUIO"].map((c) => `Key${c}`)
  .concat(["Digit5", "Digit6", "Digit7", "Digit8", "Digit9", "Digit0"]);

// Names shown for codes (as the desktop window names its keys).
const CODE_NAMES = {
  ArrowUp: "Up", ArrowDown: "Down", ArrowLeft: "Left", ArrowRight: "Right", Space: "Space",
  ControlLeft: "Left Ctrl", ControlRight: "Right Ctrl", ShiftLeft: "Left Shift", ShiftRight: "Right Shift",
};

// Atari-style combination buttons: (up|down)? (right|left)? (fire)? with at least two parts, e.g. 'upleftfire'.
const COMBO = /^(up|down)?(right|left)?(fire)?$/;

/** ['up', 'right', 'fire'] for 'uprightfire'; [] for a name that is not a combination of two or more parts. */
export function comboParts(name) {
  const m = COMBO.exec(name);
  const parts = m ? m.slice(1).filter(Boolean) : [];
  return parts.length >= 2 ? parts : [];
}

/** The readable name of a KeyboardEvent.code: 'ArrowUp' -> 'Up', 'KeyW' -> 'W', 'Digit5' -> '5'. */
export function keyName(code) {
  if (code in CODE_NAMES) return CODE_NAMES[code];
  if (code.startsWith("Key")) return code.slice(3);
  if (code.startsWith("Digit")) return code.slice(5);
  return code;
}

/**
 * The key map of a model (its parsed model.json: buttons, axes, action_dim).
 * Returns {codeToButton, action(pressedButtons) -> Float32Array(action_dim), describe() -> lines, combos,
 * buttons, axes}.
 */
export function keyMap(model) {
  const buttons = model.buttons || [];
  const axes = model.axes || [];
  const actionDim = model.action_dim ?? buttons.length + axes.length;
  if (actionDim !== buttons.length + axes.length) {
    throw new Error(`model.json: action_dim ${actionDim} is not the ${buttons.length} buttons plus ` +
                    `${axes.length} axes it names`);
  }
  const known = new Set(buttons);
  const codeToButton = {};
  for (const [codes, names] of NAMED_BINDINGS) {
    const name = names.find((n) => known.has(n));
    if (name === undefined) continue;
    for (const code of codes) if (!(code in codeToButton)) codeToButton[code] = name;
  }
  const combos = buttons.some((b) => comboParts(b).length > 0);
  const covered = new Set(Object.values(codeToButton));
  if (combos) {  // combination buttons are reached by pressing their parts together
    for (const b of buttons) {
      const parts = comboParts(b);
      if (parts.length && parts.every((p) => covered.has(p))) covered.add(b);
    }
  }
  const spare = SPARE_CODES.filter((c) => !(c in codeToButton) && !RESERVED_CODES.has(c));
  const unbound = buttons.filter((b) => !covered.has(b));
  unbound.slice(0, spare.length).forEach((name, i) => { codeToButton[spare[i]] = name; });

  /** {'up', 'right', 'fire'} -> {'uprightfire'} where the spec has that button; opposite directions cancel. */
  function combine(names) {
    const vertical = ["up", "down"].filter((n) => names.has(n));
    const horizontal = ["left", "right"].filter((n) => names.has(n));
    const parts = (vertical.length === 1 ? vertical : []).concat(horizontal.length === 1 ? horizontal : [],
                                                                 names.has("fire") ? ["fire"] : []);
    const rest = [...names].filter((n) => !["up", "down", "left", "right", "fire"].includes(n));
    const combined = parts.join("");
    if (parts.length >= 2 && known.has(combined)) return new Set([...rest, combined]);
    return new Set([...rest, ...parts.filter((p) => known.has(p))]);
  }

  /** The action vector (buttons multi-hot, then axes at 0) for an iterable of pressed button names. */
  function action(pressedButtons) {
    let names = new Set(pressedButtons);
    if (combos) names = combine(names);
    const vec = new Float32Array(actionDim);
    for (const name of names) {
      const i = buttons.indexOf(name);
      if (i < 0) throw new Error(`${JSON.stringify(name)} is not a button of game ${model.game} (${buttons.join(", ")})`);
      vec[i] = 1;
    }
    return vec;
  }

  /** One line per button ('up: Up, W'), then the combinations and the axes. */
  function describe() {
    const lines = [];
    for (const b of buttons) {
      const keys = Object.entries(codeToButton).filter(([, n]) => n === b).map(([c]) => keyName(c));
      if (!keys.length && combos && comboParts(b).length) continue;  // reached by pressing its parts; said below
      lines.push(`${b}: ${keys.length ? keys.join(", ") : "(unbound)"}`);
    }
    if (combos) lines.push("combinations (e.g. upright, upfire): press their keys together");
    for (const a of axes) lines.push(`${a}: an axis, not played from the page (held at 0)`);
    return lines;
  }

  return { codeToButton, action, describe, combos, buttons, axes };
}
