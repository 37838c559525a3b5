"""A small hand-written Traditional → Simplified Chinese character table.

It is not a full converter: it covers common characters of video prompts and every character of the
default safety word lists, which is what language routing and word-list matching need. Pairs are
written "繁简" and separated by spaces.
"""

from __future__ import annotations

_PAIRS = """
愛爱 礙碍 襖袄 罷罢 擺摆 敗败 頒颁 辦办 幫帮 綁绑 寶宝 飽饱 報报 貝贝 備备 筆笔 畢毕 邊边 變变 標标
錶表 別别 賓宾 餅饼 補补 財财 蠶蚕 慘惨 層层 產产 長长 場场 腸肠 嘗尝 廠厂 車车 徹彻 塵尘 陳陈 稱称
誠诚 遲迟 齒齿 衝冲 蟲虫 醜丑 處处 觸触 傳传 創创 純纯 詞词 從从 聰聪 叢丛 錯错 達达 帶带 單单 擔担
膽胆 當当 黨党 島岛 導导 燈灯 鄧邓 敵敌 遞递 點点 電电 釣钓 調调 鐵铁 聽听 廳厅 頂顶 訂订 東东 動动
凍冻 鬥斗 獨独 讀读 賭赌 斷断 隊队 對对 噸吨 奪夺 墮堕 鵝鹅 額额 兒儿 爾尔 餓饿 發发 髮发 罰罚 範范
飯饭 訪访 飛飞 廢废 費费 紛纷 墳坟 奮奋 憤愤 糞粪 豐丰 風风 楓枫 鳳凤 膚肤 婦妇 復复 複复 負负 該该
蓋盖 趕赶 幹干 乾干 剛刚 鋼钢 崗岗 綱纲 個个 給给 鞏巩 貢贡 溝沟 構构 購购 穀谷 顧顾 颳刮 關关 觀观
館馆 慣惯 廣广 歸归 龜龟 櫃柜 貴贵 國国 過过 鍋锅 漢汉 號号 後后 紅红 護护 畫画 劃划 話话 華华 懷怀
壞坏 歡欢 環环 還还 黃黄 揮挥 輝辉 會会 匯汇 彙汇 繪绘 夥伙 貨货 獲获 機机 積积 擊击 雞鸡 極极 幾几
級级 際际 濟济 計计 記记 紀纪 繼继 價价 駕驾 間间 簡简 見见 艦舰 劍剑 漸渐 踐践 鑒鉴 鍵键 將将 獎奖
講讲 醬酱 膠胶 驕骄 嬌娇 腳脚 餃饺 較较 轎轿 階阶 節节 結结 潔洁 緊紧 僅仅 盡尽 儘尽 進进 驚惊 經经
鏡镜 競竞 淨净 舊旧 舉举 劇剧 據据 覺觉 絕绝 軍军 開开 凱凯 殼壳 課课 墾垦 懇恳 庫库 塊块 寬宽 礦矿
虧亏 擴扩 蠟蜡 來来 賴赖 藍蓝 蘭兰 攔拦 欄栏 爛烂 覽览 纜缆 勞劳 樂乐 淚泪 類类 離离 裡里 裏里 禮礼
歷历 曆历 麗丽 勵励 厲厉 隸隶 聯联 連连 憐怜 簾帘 臉脸 煉炼 練练 糧粮 涼凉 兩两 輛辆 諒谅 療疗 獵猎
鄰邻 臨临 靈灵 齡龄 嶺岭 領领 劉刘 龍龙 樓楼 爐炉 陸陆 錄录 驢驴 屢屡 綠绿 亂乱 輪轮 論论 羅罗 蘿萝
邏逻 騾骡 馬马 媽妈 嗎吗 買买 賣卖 麥麦 滿满 貓猫 錨锚 沒没 門门 們们 夢梦 彌弥 謎谜 綿绵 麵面 廟庙
滅灭 鳴鸣 銘铭 謀谋 畝亩 納纳 難难 腦脑 惱恼 鬧闹 內内 擬拟 鳥鸟 寧宁 濃浓 農农 諾诺 歐欧 盤盘 龐庞
賠赔 噴喷 騙骗 飄飘 頻频 貧贫 蘋苹 憑凭 評评 潑泼 撲扑 樸朴 齊齐 騎骑 豈岂 氣气 棄弃 遷迁 錢钱 鉛铅
淺浅 槍枪 牆墙 強强 橋桥 喬乔 竅窍 親亲 輕轻 傾倾 慶庆 窮穷 區区 軀躯 權权 勸劝 確确 讓让 繞绕 熱热
認认 榮荣 軟软 銳锐 潤润 灑洒 薩萨 賽赛 傘伞 喪丧 掃扫 殺杀 紗纱 曬晒 閃闪 陝陕 傷伤 賞赏 燒烧 紹绍
設设 攝摄 審审 嬸婶 腎肾 聲声 繩绳 勝胜 聖圣 師师 獅狮 濕湿 詩诗 時时 實实 識识 勢势 適适 釋释 飾饰
視视 試试 壽寿 獸兽 書书 樹树 術术 雙双 誰谁 稅税 順顺 說说 碩硕 絲丝 飼饲 鬆松 頌颂 訴诉 肅肃 雖虽
隨随 歲岁 孫孙 損损 鎖锁 臺台 檯台 颱台 態态 攤摊 灘滩 談谈 嘆叹 湯汤 燙烫 濤涛 討讨 騰腾 題题 體体
條条 貼贴 頭头 圖图 團团 襪袜 彎弯 灣湾 萬万 網网 偉伟 圍围 違违 衛卫 為为 偽伪 韋韦 聞闻 穩稳 問问
窩窝 臥卧 烏乌 無无 霧雾 務务 誤误 戲戏 係系 繫系 細细 蝦虾 嚇吓 鮮鲜 險险 顯显 縣县 現现 線线 憲宪
廂厢 鄉乡 響响 項项 詳详 蕭萧 銷销 曉晓 嘯啸 協协 寫写 謝谢 興兴 兇凶 須须 鬚须 許许 緒绪 續续 軒轩
選选 學学 尋寻 訓训 訊讯 壓压 鴉鸦 啞哑 亞亚 煙烟 嚴严 鹽盐 顏颜 驗验 艷艳 陽阳 楊杨 養养 樣样 遙遥
藥药 爺爷 業业 葉叶 頁页 醫医 儀仪 億亿 憶忆 藝艺 議议 譯译 異异 陰阴 銀银 飲饮 隱隐 應应 營营 蠅蝇
贏赢 擁拥 湧涌 優优 憂忧 郵邮 猶犹 遊游 魚鱼 漁渔 與与 語语 獄狱 預预 園园 員员 圓圆 緣缘 遠远 願愿
約约 躍跃 閱阅 雲云 運运 醞酝 雜杂 災灾 載载 暫暂 贊赞 髒脏 臟脏 鑿凿 棗枣 澤泽 責责 賊贼 贈赠 紮扎
閘闸 詐诈 齋斋 債债 氈毡 戰战 佔占 張张 漲涨 帳帐 賬账 趙赵 這这 針针 偵侦 陣阵 鎮镇 爭争 睜睁 徵征
證证 鄭郑 織织 職职 執执 紙纸 誌志 製制 質质 鐘钟 鍾钟 種种 腫肿 眾众 週周 軸轴 晝昼 皺皱 豬猪 諸诸
燭烛 囑嘱 築筑 註注 駐驻 專专 磚砖 轉转 賺赚 莊庄 裝装 狀状 壯壮 準准 資资 綜综 總总 縱纵 鄒邹 組组
鑽钻 隻只 駛驶 駱骆 駝驼 鯨鲸 鯊鲨 鴨鸭 鷹鹰 鴿鸽 犧牺 穢秽 戀恋 斬斩 襲袭 彈弹 屍尸 殘残 販贩 麼么
妳你 燦灿 濱滨 嶼屿 峽峡 巖岩 螢萤 滷卤 鹹咸 緩缓 綻绽 翹翘 葦苇 蘆芦 漿浆 滾滚 潛潜 澀涩 顆颗
鋪铺 鑰钥 銅铜 錦锦 鏈链 鎚锤 繽缤 幟帜 燼烬 輿舆 縮缩 蹤踪 閒闲 嬰婴 綢绸 緞缎 鋒锋 颶飓 驟骤 晉晋
驅驱 馳驰 騁骋 鵬鹏 鶴鹤 鸚鹦 鵡鹉 蝸蜗 蟻蚁 瑪玛 瓏珑 璽玺 瑤瑶 勁劲
""".split()

TRAD_TO_SIMP: dict[str, str] = {p[0]: p[1] for p in _PAIRS if len(p) == 2 and p[0] != p[1]}

# Simplified characters that are also ordinary Traditional characters (so they say nothing about
# which script a text is written in).
_SHARED = set("只后干面里台系云斗谷丑冲几准松征志制注周表范扎占凶苹朴胜叶伙刮虫咸岩你")

SIMPLIFIED_ONLY: frozenset[str] = frozenset(set(TRAD_TO_SIMP.values()) - _SHARED)
TRADITIONAL_ONLY: frozenset[str] = frozenset(TRAD_TO_SIMP)

_TABLE = str.maketrans(TRAD_TO_SIMP)


def to_simplified(text: str) -> str:
    """Map the Traditional characters this table knows to Simplified; everything else is kept."""
    return text.translate(_TABLE)
